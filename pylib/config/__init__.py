"""Settings from the environment and a TOML file, and secrets from files and 1Password."""
