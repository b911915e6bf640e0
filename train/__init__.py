"""ProCo training, export and reporting for proco-serve (CIFAR-10-LT)."""
