"""The CDK app that deploys gallop. Runtime code never imports this package."""
