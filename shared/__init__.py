"""Code both sides of chatlane use: settings, the Redis key schema, Lua scripts and stores."""
