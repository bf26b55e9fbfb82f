//! `proxmox-client`: a typed async client for the parts of the Proxmox VE API Bulwark uses
//! (storage provisioning, node storage status, tasks). Built in issue 6.
