package builder

import "context"

// addStage appends a stage to the plan.
type addStage func(name string, inputs []string, run func(context.Context, *State) error)

// appliancePackages are the packages the recipe's appliance sections (ssh,
// firewall, containers, gateway, first boot) need in the bootstrap.
func (p *Plan) appliancePackages() []string { return nil }

// addApplianceStages appends the stages of the appliance sections; they run
// after files and before units, so units they install can be enabled.
func (p *Plan) addApplianceStages(add addStage) {}
