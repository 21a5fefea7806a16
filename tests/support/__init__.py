"""What the tests run against and talk with: servers they start (Redis and workers come from
dashboard.services.processes, which the demo uses too), the dashboard as a live server, a reverse proxy, RabbitMQ,
HTTP and websocket clients, and one wait loop."""
