"""The server side: capture, transfer, aggregation, queries, scheduling and the gRPC/HTTP front ends."""
