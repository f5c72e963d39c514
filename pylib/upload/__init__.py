"""The durable upload queue, the uploader that drains it, and what a destination promises."""
