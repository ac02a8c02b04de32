"""The scorer's REST API as both sides see it: the schemas, the typed client, the plots."""
