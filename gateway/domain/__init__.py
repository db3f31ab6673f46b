"""The domain ring: values and pure rules, by concept (actions, principals, holds,
verdicts, validation, redaction, policy, detect, audit). It imports neither grpc nor
redis and does no I/O beyond reading the files it is handed; it takes values (and a
clock reading) and returns values. See docs/architecture.md."""
