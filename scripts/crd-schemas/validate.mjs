// Validates custom resources against the JSON schemas of their published CRDs, as shipped
// (compiled) by the npm packages @kubernetes-models/keda, @kubernetes-models/prometheus-operator
// and @kubernetes-models/cert-manager (versions pinned in package.json / package-lock.json).
//   node validate.mjs DOCS.json     DOCS.json: a JSON array of rendered documents
// Exit 0: every document valid; 1: a document is invalid or of a kind with no schema here.
// Those schemas, like the CRDs, do not forbid unknown fields (the API server prunes them), so
// scripts/check_deploy.py adds structural checks of the fields Vitals relies on.
import { readFileSync } from "node:fs";

const MODELS = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject", "ScaledObject"],
  "monitoring.coreos.com/v1/PodMonitor": ["@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PodMonitor", "PodMonitor"],
  "monitoring.coreos.com/v1/PrometheusRule": ["@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule", "PrometheusRule"],
  "cert-manager.io/v1/Certificate": ["@kubernetes-models/cert-manager/cert-manager.io/v1/Certificate", "Certificate"],
  "cert-manager.io/v1/Issuer": ["@kubernetes-models/cert-manager/cert-manager.io/v1/Issuer", "Issuer"],
};

const docs = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const where = `${key} ${doc.metadata?.namespace ?? ""}/${doc.metadata?.name ?? "?"}`;
  const model = MODELS[key];
  if (!model) {
    console.error(`error: ${where}: no published schema known for this kind`);
    failed++;
    continue;
  }
  const mod = await import(model[0]);
  try {
    new mod[model[1]](doc).validate();
  } catch (e) {
    console.error(`error: ${where}: ${e.message}`);
    failed++;
  }
}
console.log(`crd-schemas: ${docs.length - failed} of ${docs.length} custom resources valid against their published schemas`);
process.exit(failed ? 1 : 0);
