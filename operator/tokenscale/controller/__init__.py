"""The operator: Kopf handlers (thin) over reconcile functions (plan, render, apply, status)."""
