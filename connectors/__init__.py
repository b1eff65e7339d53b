"""CRM connectors: the only code that knows a CRM's wire format."""
