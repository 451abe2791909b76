"""The front ends: the composition root (`runtime`), gRPC servicers and server, the HTTP gateway, proto conversion."""
