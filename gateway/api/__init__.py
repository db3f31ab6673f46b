"""The wire ring: gRPC servicers. Parse, authorize, call the domain, map errors."""
