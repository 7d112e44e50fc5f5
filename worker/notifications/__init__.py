"""The per-process notification connection: channel, subscriptions, socket, confirmations."""
