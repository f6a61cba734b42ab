"""The worker role: one engine on one device, claiming tasks from the table and finishing them."""
