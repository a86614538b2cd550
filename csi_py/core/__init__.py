"""The driver's domain logic: no grpc, no direct kernel calls (those go through a Host)."""
