//! Prometheus metrics: one process-wide recorder, rendered by `GET /metrics`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Buckets for request latencies, in seconds: fine-grained below 10 ms where our hot paths live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A handle on the process' metrics registry.
#[derive(Clone)]
pub struct Metrics(PrometheusHandle);

impl Metrics {
    /// The process-wide registry, installed on first use (tests may build many routers in one process).
    pub fn global() -> Self {
        static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("bucket list is non-empty")
                .build_recorder();
            let handle = recorder.handle();
            // Histogram samples are buffered raw until drained; without a scraper they would pile up under load,
            // so a small thread drains them into their buckets every second (at 40k requests/s and two histograms
            // per request that keeps about 1 MB buffered; every 5 s it was about 4 MB of the gateway's RSS).
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    upkeep.run_upkeep();
                });
            // Fails only if another recorder was installed first; ours then stays private and renders empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        });
        Self(handle.clone())
    }

    /// The Prometheus text exposition of every metric recorded so far.
    pub fn render(&self) -> String {
        self.0.render()
    }
}
