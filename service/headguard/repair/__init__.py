"""Head-wise repair: select the heads that carry a backdoor, realign them, and ship the change as a patch."""
