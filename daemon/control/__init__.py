"""The gRPC control plane of hubd."""
