//! The legacy HTTP Data Collector API sink (retired 2026-09-14; ingestion still works for TLS 1.2+
//! clients). Off by default. So far: the SharedKey request signature; the sink itself comes with
//! the delivery work (issue 3).

pub mod signature;
