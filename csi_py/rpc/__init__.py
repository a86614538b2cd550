"""gRPC servicers: request -> core call -> response. The only package that imports grpc
and the generated code (with server.py and the client)."""
