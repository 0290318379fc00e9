//! Kubernetes, as far as portwatch needs it: the pod of a cgroup (`pods`),
//! and its names from the container runtime over CRI (`cri`).

pub mod cri;
pub mod pods;
