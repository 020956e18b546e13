//! Accuracy against sentence-transformers: the committed reference (made by
//! scripts/make-reference.py, see docs/accuracy.md) must be matched to cosine ≥ 0.9999
//! for every text, one at a time and in one batch. Without the model (`make model`)
//! the test fails.

use candle_core::Device;
use serde::Deserialize;
use vitals_e2e::bins::model_dir;
use vitals_worker::model::bert::BertEmbedder;
use vitals_worker::model::tokenizer::TextTokenizer;
use vitals_worker::model::{l2_normalize, Embedder, ModelSpec};

#[derive(Deserialize)]
struct Reference {
    dimension: usize,
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    text: String,
    tokens: usize,
    embedding: Vec<f32>,
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

#[test]
fn matches_sentence_transformers() {
    let dir = model_dir();
    let reference: Reference =
        serde_json::from_str(include_str!("data/reference.json")).expect("reference.json is valid");
    assert!(reference.items.len() >= 30);
    let spec = ModelSpec::read(&dir).expect("model folder is valid");
    assert_eq!(spec.dimension, reference.dimension);
    let tokenizer = TextTokenizer::load(&dir, spec.max_seq_length).expect("tokenizer");
    let mut model =
        BertEmbedder::load(&spec, &Device::Cpu, &mut |_, _| Ok(())).expect("model loads");

    let tokens: Vec<Vec<u32>> = reference
        .items
        .iter()
        .map(|item| tokenizer.encode(&item.text).expect("tokenizes").ids)
        .collect();
    for (item, ids) in reference.items.iter().zip(&tokens) {
        assert_eq!(ids.len(), item.tokens, "token count of {:?}", item.text);
    }

    let mut singles = Vec::new();
    let mut worst = (1.0f64, 0.0f32);
    for (item, ids) in reference.items.iter().zip(&tokens) {
        let mut v = model.embed(&[ids]).expect("embeds").remove(0);
        l2_normalize(&mut v);
        let cos = cosine(&v, &item.embedding);
        let diff = v
            .iter()
            .zip(&item.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        worst = (worst.0.min(cos), worst.1.max(diff));
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", item.text);
        singles.push(v);
    }
    eprintln!(
        "single: min cosine {:.9}, max abs diff {:.3e}",
        worst.0, worst.1
    );

    let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
    let batched = model.embed(&refs).expect("embeds batch");
    let mut min_cos = 1.0f64;
    for ((mut v, single), item) in batched.into_iter().zip(&singles).zip(&reference.items) {
        l2_normalize(&mut v);
        let cos = cosine(&v, single);
        min_cos = min_cos.min(cos);
        assert!(
            cos >= 0.9999,
            "batched vs single cosine {cos} for {:?}",
            item.text
        );
        assert!(cosine(&v, &item.embedding) >= 0.9999);
    }
    eprintln!("batched vs single: min cosine {min_cos:.9}");
}
