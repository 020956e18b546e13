//! How the state is shown: the probe port ([`http`]), Prometheus [`metrics`], the
//! [`ticker`] that logs transitions and keeps gauges fresh, and the operators' [`status`],
//! all in the words of [`text`].

pub mod http;
pub mod metrics;
pub mod status;
pub mod text;
pub mod ticker;
