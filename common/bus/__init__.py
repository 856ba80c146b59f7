"""The ZeroMQ bus: typed messages, request/reply clients, the event channel."""
