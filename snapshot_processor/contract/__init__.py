"""The wire contract with the existing services, and the message kinds between the stages."""
