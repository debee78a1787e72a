#!/usr/bin/env bash
# The Azure side of ado-scaler, idempotent: safe to run again.
#
#   1. a user-assigned managed identity (created, or reused);
#   2. a federated credential on it for the scaler's service account, trusting the cluster's
#      OIDC issuer; the agents' service account only with --self-registration (agent pods that
#      hold the identity and register themselves). Without it, an agents' credential left by an
#      earlier install is deleted: with just-in-time registration nothing in an agent pod may
#      act as the identity;
#   3. the identity added to the Azure DevOps organisation, and given the Administrator role on
#      the agent pool (the scaler reads the pool's queue and registers one offline placeholder
#      per ScaledJob, so that ADO queues jobs while the pool is scaled to zero, and registers
#      and deletes the agents). Reader or Service Account cannot register agents.
#
# Needs the Azure CLI, logged in (`az login`) as someone who can create identities in the
# resource group and is an administrator of the Azure DevOps organisation.
# `--dry-run` prints the commands instead of running them.
set -euo pipefail

ADO_RESOURCE=499b84ac-1321-427f-aa17-267ca6975798
AUDIENCE=api://AzureADTokenExchange

resource_group=""
cluster=""
identity="ado-scaler"
location=""
org_url=""
pool=""
scaler_namespace="ado-scaler"
scaler_sa="ado-scaler"
agent_namespace="ado-agents"
agent_sa="ado-agent"
dry_run=0
self_registration=0

usage() {
  cat <<USAGE
usage: $0 --resource-group RG --cluster AKS --org https://dev.azure.com/ORG --pool POOL [options]

  --identity NAME           managed identity to create or reuse (default: $identity)
  --location LOCATION       for a new identity (default: the resource group's)
  --scaler-namespace NS     (default: $scaler_namespace)   --scaler-sa SA (default: $scaler_sa)
  --agent-namespace NS      (default: $agent_namespace)   --agent-sa SA  (default: $agent_sa)
  --self-registration       also federate the agents' service account (the self-registration
                            component); without it, such a credential is deleted
  --dry-run                 print the commands, change nothing
USAGE
}

die() { echo "error: $*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --resource-group) resource_group=${2:?}; shift 2 ;;
    --cluster) cluster=${2:?}; shift 2 ;;
    --identity) identity=${2:?}; shift 2 ;;
    --location) location=${2:?}; shift 2 ;;
    --org) org_url=${2:?}; shift 2 ;;
    --pool) pool=${2:?}; shift 2 ;;
    --scaler-namespace) scaler_namespace=${2:?}; shift 2 ;;
    --scaler-sa) scaler_sa=${2:?}; shift 2 ;;
    --agent-namespace) agent_namespace=${2:?}; shift 2 ;;
    --agent-sa) agent_sa=${2:?}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --self-registration) self_registration=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[ -n "$resource_group" ] || die "--resource-group is required"
[ -n "$cluster" ] || die "--cluster is required"
[ -n "$org_url" ] || die "--org is required"
[ -n "$pool" ] || die "--pool is required"
org_url=${org_url%/}
case "$org_url" in
  https://dev.azure.com/*) org=${org_url#https://dev.azure.com/} ;;
  https://*.visualstudio.com) org=${org_url#https://}; org=${org%%.*} ;;
  *) die "--org must look like https://dev.azure.com/ORG or https://ORG.visualstudio.com" ;;
esac

# Runs a command that changes something; in a dry run, prints it.
run() {
  if ((dry_run)); then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Runs a read-only query and prints its output; in a dry run, prints the command and a placeholder.
query() {
  local placeholder=$1
  shift
  if ((dry_run)); then
    { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
    printf '%s\n' "$placeholder"
  else
    "$@"
  fi
}

if ! ((dry_run)); then
  command -v az >/dev/null 2>&1 || die "the Azure CLI (az) is required"
  az account show >/dev/null 2>&1 || die "not logged in: run az login"
fi

echo "== cluster OIDC issuer" >&2
issuer=$(query "<oidc-issuer-of-$cluster>" az aks show --resource-group "$resource_group" --name "$cluster" \
  --query oidcIssuerProfile.issuerUrl --output tsv)
[ -n "$issuer" ] || die "cluster $cluster has no OIDC issuer: az aks update -g $resource_group -n $cluster --enable-oidc-issuer --enable-workload-identity"

echo "== managed identity $identity" >&2
if ((dry_run)) || ! az identity show --resource-group "$resource_group" --name "$identity" >/dev/null 2>&1; then
  if [ -n "$location" ]; then
    run az identity create --resource-group "$resource_group" --name "$identity" --location "$location" --output none
  else
    run az identity create --resource-group "$resource_group" --name "$identity" --output none
  fi
else
  echo "reusing existing identity $identity" >&2
fi
client_id=$(query "<client-id>" az identity show --resource-group "$resource_group" --name "$identity" --query clientId --output tsv)
principal_id=$(query "<principal-id>" az identity show --resource-group "$resource_group" --name "$identity" --query principalId --output tsv)
tenant_id=$(query "<tenant-id>" az identity show --resource-group "$resource_group" --name "$identity" --query tenantId --output tsv)

echo "== federated credentials" >&2
federated=("$scaler_namespace:$scaler_sa")
if ((self_registration)); then
  federated+=("$agent_namespace:$agent_sa")
else
  # Just-in-time registration: the agents' service account must not be able to act as us.
  name="$agent_namespace-$agent_sa"
  if ((dry_run)); then
    echo "# if present: az identity federated-credential delete --name $name (agents hold no identity)" >&2
  elif az identity federated-credential show --resource-group "$resource_group" --identity-name "$identity" \
    --name "$name" --output none 2>/dev/null; then
    run az identity federated-credential delete --resource-group "$resource_group" \
      --identity-name "$identity" --name "$name" --yes
  fi
fi
for pair in "${federated[@]}"; do
  subject="system:serviceaccount:$pair"
  name="${pair/:/-}"
  existing=""
  if ! ((dry_run)); then
    existing=$(az identity federated-credential show --resource-group "$resource_group" --identity-name "$identity" \
      --name "$name" --query subject --output tsv 2>/dev/null || true)
  fi
  if [ "$existing" = "$subject" ]; then
    echo "federated credential $name already trusts $subject" >&2
  else
    [ -z "$existing" ] || run az identity federated-credential delete --resource-group "$resource_group" \
      --identity-name "$identity" --name "$name" --yes
    run az identity federated-credential create --resource-group "$resource_group" --identity-name "$identity" \
      --name "$name" --issuer "$issuer" --subject "$subject" --audiences "$AUDIENCE" --output none
  fi
done

echo "== Azure DevOps organisation $org" >&2
entitlement=$(printf '{"accessLevel":{"accountLicenseType":"stakeholder"},"servicePrincipal":{"origin":"aad","originId":"%s","subjectKind":"servicePrincipal"}}' "$principal_id")
ado_identity=$(query "<ado-identity-id>" az rest --method post --resource "$ADO_RESOURCE" \
  --uri "https://vsaex.dev.azure.com/$org/_apis/serviceprincipalentitlements?api-version=7.1-preview.1" \
  --headers Content-Type=application/json --body "$entitlement" \
  --query "operationResult.servicePrincipalId || operationResult.result.id" --output tsv)
[ -n "$ado_identity" ] || die "could not add identity $identity to $org_url: add it by hand (Organization settings > Users > Add, as a service principal)"

pool_id=$(query "<pool-id>" az rest --method get --resource "$ADO_RESOURCE" \
  --uri "$org_url/_apis/distributedtask/pools?poolName=$pool&api-version=7.1" --query "value[0].id" --output tsv)
[ -n "$pool_id" ] || die "no agent pool named $pool in $org_url: create it (Organization settings > Agent pools)"

role=$(printf '[{"roleName":"Administrator","userId":"%s"}]' "$ado_identity")
run az rest --method put --resource "$ADO_RESOURCE" \
  --uri "$org_url/_apis/securityroles/scopes/distributedtask.agentpoolrole/roleassignments/resources/$pool_id?api-version=7.1-preview.1" \
  --headers Content-Type=application/json --body "$role" --output none

cat <<DONE

Done. Managed identity $identity
  client id: $client_id
  tenant id: $tenant_id
  trusted:   system:serviceaccount:$scaler_namespace:$scaler_sa
             system:serviceaccount:$agent_namespace:$agent_sa
  (issuer $issuer, audience $AUDIENCE)
  Azure DevOps: member of $org_url, Administrator of agent pool $pool ($pool_id)

Left to do: in deploy/kustomization.yaml set
  organizationURL=$org_url
  poolName=$pool
  azureClientID=$client_id
  azureTenantID=$tenant_id
then: kubectl apply -k deploy/ and
  kubectl -n $scaler_namespace exec deploy/ado-scaler -- ado-scaler check --org $org_url --pool $pool
DONE
