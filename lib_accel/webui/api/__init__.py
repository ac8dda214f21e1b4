"""The /accel/v1/* JSON API: routes and access control."""
