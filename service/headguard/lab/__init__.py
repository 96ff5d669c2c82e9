"""The backdoor lab: plants backdoors into real pretrained models and measures defenses on them.

Only this package (and only its evaluation harness) may know a model's trigger.
"""
