//! Nothing to link: this crate holds the tests of augur's deployment files
//! (`tests/`), which render and parse them as the tools that use them
//! would — `kubectl kustomize` into the Kubernetes API's own types.
