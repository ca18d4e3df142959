# Vault ACL policy of the trusted builder's AppRole (docs/deploy.md, step 2). The builder reads
# KV v2 secrets under airlock/ and nothing else; renewing and revoking its own token are in Vault's
# default policy. Load it with:
#   vault policy write airlock-builder airlock-builder.hcl
path "secret/data/airlock/*" {
  capabilities = ["read"]
}
