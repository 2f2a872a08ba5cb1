"""The Rexec broker: routes frames between authenticated clients and their users' workers."""

from rexec_broker.config import BrokerSettings
from rexec_broker.server import Broker

__all__ = ["Broker", "BrokerSettings"]
