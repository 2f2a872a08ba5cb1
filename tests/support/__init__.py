"""Helpers shared by the test tiers: real servers on loopback, a real identity provider."""
