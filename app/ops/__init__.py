"""Process tooling: the `make run` launcher, embedded servers, the operator CLI."""
