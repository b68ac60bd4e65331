package verify

import (
	"github.com/bakeimg/bake/builder/recipe"
	"github.com/bakeimg/bake/claims"
)

// The claims verify checks are package claims': the same derivation from
// the resolved recipe that the build writes into the image.
type (
	Spec         = claims.Spec
	FirewallSpec = claims.FirewallSpec
	GatewaySpec  = claims.GatewaySpec
	// StateVolumeSpec is the state volume an image looks for.
	StateVolumeSpec = claims.StateVolumeSpec
)

// Defaults of the appliance (recipes/openclaw.yaml, DESIGN.md section 2),
// checked when neither a recipe nor the image's record says otherwise.
const (
	DefaultAdminUser     = claims.DefaultAdminUser
	DefaultSSHPort       = claims.DefaultSSHPort
	DefaultGatewayPort   = claims.DefaultGatewayPort
	DefaultGatewayName   = claims.DefaultGatewayName
	DefaultGatewayUser   = claims.DefaultGatewayUser
	DefaultGatewayConfig = claims.DefaultGatewayConfig
	TailscalePort        = claims.TailscalePort
)

// DefaultSpec is the OpenClaw appliance as bake's default recipe makes it.
func DefaultSpec() Spec { return claims.Default() }

// SpecFromRecipe is claims.FromRecipe.
func SpecFromRecipe(r *recipe.Recipe) (Spec, error) { return claims.FromRecipe(r) }

// needleRules are the scanner's rules for the recipe's literal secrets.
func needleRules(ns []claims.Needle) []Rule {
	var out []Rule
	for _, n := range ns {
		out = append(out, NeedleRule(n.Name, n.Secret))
	}
	return out
}
