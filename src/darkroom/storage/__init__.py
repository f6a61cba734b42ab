"""Result storage: where finished images live and how clients reach them."""
