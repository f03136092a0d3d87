"""The web console and REST API (``opsq web``): users and roles, the audit log, the JSON
API under ``/api/v1`` and the server-rendered pages."""
