"""The API's routers, one per resource; ``dispatcher.api`` includes them all."""
