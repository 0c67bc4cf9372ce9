//! The proxy path's Prometheus metrics (APIcast's names), with handles resolved once: looking a metric up by name
//! and label on every request costs a hash, a lock and an allocation for the label.

use metrics::{Counter, Histogram};
use std::sync::OnceLock;

const CODES: usize = 500;

/// Handles for the proxy's metrics; statuses outside 100..=599 share the `other` label.
pub struct ProxyMetrics {
    /// `total_response_time_seconds`: from the request's arrival to the answer's head.
    pub total_time: Histogram,
    /// `upstream_response_time_seconds`: waiting for the upstream's answer head.
    pub upstream_time: Histogram,
    /// One slot per code 100..=599, then one for the rest.
    status: Box<[OnceLock<Counter>]>,
    upstream_status: Box<[OnceLock<Counter>]>,
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyMetrics {
    /// Resolves the handles in the recorder installed now (metrics recorded before a recorder exists are lost).
    pub fn new() -> Self {
        Self {
            total_time: metrics::histogram!("total_response_time_seconds"),
            upstream_time: metrics::histogram!("upstream_response_time_seconds"),
            status: (0..=CODES).map(|_| OnceLock::new()).collect(),
            upstream_status: (0..=CODES).map(|_| OnceLock::new()).collect(),
        }
    }

    /// `apicast_status{status}`: answers given to clients.
    pub fn status(&self, code: u16) -> &Counter {
        Self::slot(&self.status, "apicast_status", code)
    }

    /// `upstream_status{status}`: answers received from upstreams (502/504 when there was none).
    pub fn upstream_status(&self, code: u16) -> &Counter {
        Self::slot(&self.upstream_status, "upstream_status", code)
    }

    fn slot<'a>(slots: &'a [OnceLock<Counter>], name: &'static str, code: u16) -> &'a Counter {
        let index = usize::from(code).checked_sub(100).filter(|i| *i < CODES);
        match index {
            Some(i) => {
                slots[i].get_or_init(|| metrics::counter!(name, "status" => code.to_string()))
            }
            // hyper allows codes up to 999; the rare ones share the last slot.
            None => slots[CODES].get_or_init(|| metrics::counter!(name, "status" => "other")),
        }
    }
}
