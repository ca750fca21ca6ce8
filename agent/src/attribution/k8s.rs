//! Kubernetes pod metadata (filled in later).
