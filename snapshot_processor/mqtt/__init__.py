"""Home Assistant over MQTT: discovery, the latest image, sensors and a snapshot button,
beside the chain and never in its way."""
