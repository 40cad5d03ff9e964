"""chatlane's HTTP front end: accepts turns, queues them, serves their results."""
