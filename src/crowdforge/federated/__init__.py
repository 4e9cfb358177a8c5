"""Federated members: partner sites train on data that never leaves them (Flower's deployment runtime).

- :mod:`.site_data`: what a site reads from its own folder (and quarantines, with reasons, on the spot);
- :mod:`.local_training`: one site's local training of the member's trainable part (partial or LoRA,
  FedProx, DP-SGD with Opacus), pure torch;
- :mod:`.dp_accounting`: the (epsilon, delta) accountant;
- :mod:`.client_app` / :mod:`.server_app`: the Flower ClientApp and ServerApp (SecAgg+, DP, the gold-check gate);
- :mod:`.deployment`: a SuperLink and one SuperNode per site as local processes, and ``flwr run``.
"""
