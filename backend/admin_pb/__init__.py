"""Python code generated from protos/taskring/admin/v1/admin.proto (the admin portal's gRPC API).

Regenerate with `python -m backend.admin_pb.generate` (`make proto`) after
changing the proto; a unit test fails while the committed files are stale.
"""
