variable "nodes" {
  type = list(object({ name = string, ip = string, role = string }))
}

variable "network_id" {
  type = string
}

variable "gateway" {
  type = string
}

resource "terraform_data" "vm" {
  for_each = { for n in var.nodes : n.name => n }
  input = {
    name    = each.key
    ip      = each.value.ip
    network = var.network_id
  }
}

output "vm_ids" {
  value = { for name, vm in terraform_data.vm : name => vm.id }
}

output "gateway" {
  value = var.gateway
}
