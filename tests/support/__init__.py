"""Support shared by the tests: sample data, a live scorer's requests and checks, the trainer
YAML builder and process. Waiting goes through delta_loss_devtools.waiting.wait_until, never a
sleep."""
