// Each test binary uses its own part of these helpers.
#![allow(dead_code)]
pub mod flood;
pub mod hardening;
pub mod restart;
pub mod surfaces;
pub mod verdicts;
