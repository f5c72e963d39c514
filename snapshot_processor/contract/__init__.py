"""The wire contract with the existing services: triggers in, image events and heartbeats out,
the exchanges declared as they declare them, and the message kinds between the stages."""
