"""What travels between the services over ZeroMQ: messages, hello, handshake, error codes."""
