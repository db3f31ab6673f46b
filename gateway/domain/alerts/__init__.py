"""Alerts: rules over the events of the gateway, their firings, and how they are sent."""
