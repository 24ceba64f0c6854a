# A root module, used by terrace as it is. In a real homelab this would use
# the Proxmox provider; terraform_data keeps the example offline.
variable "name" {
  type = string
}

variable "cidr" {
  type = string
}

resource "terraform_data" "vlan" {
  input = {
    name = var.name
    cidr = var.cidr
  }
}

output "vlan_id" {
  value = terraform_data.vlan.id
}

output "cidr" {
  value = var.cidr
}

output "gateway" {
  value = cidrhost(var.cidr, 1)
}
