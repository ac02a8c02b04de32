"""The dashboard's page, script and style, served by scorer_svc.api.routes.dashboard."""
