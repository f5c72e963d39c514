"""RabbitMQ: connection parameters, the consumer, the publisher with its durable outbox."""
